"""Op engines of the accelerator top (``hw/accel.py``): one per opcode family.

Each engine is a ``wiring.Component`` with ``hw.ops.base.EngineSignature``: it receives the
command's arguments (``golden.isa.ARGS_UNION``), checks them, moves the operands between
memory and its datapath block(s) through a DMA port, and reports done + an ``ErrorCode``.
The top dispatches a decoded command to the engine of its opcode and multiplexes the
memory port to it; the engines are the RTL twins of the golden backend's ``_op_*``
methods (``host/backends/golden.py``), and ``sim/op_bench.py`` checks each against them.
"""
