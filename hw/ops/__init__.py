"""Op engines of the accelerator top (``hw/accel.py``): one per opcode.

Each engine is an ``hw.ops.base.Engine`` (a ``wiring.Component`` with ``EngineSignature``):
it receives the command's arguments (``golden.isa.ARGS_UNION``), checks them as its
opcode's contract (``golden.isa.CONTRACTS``) says -- the check states are built from that
table by ``hw.ops.base.ArgChecks``, plus the engine's own ``LIMITS`` -- moves the operands
between memory and its datapath block(s) through a DMA port, and reports done + an
``ErrorCode``. The top dispatches a decoded command to the engine of its opcode
(``hw.accel.ENGINES``) and multiplexes the memory port to it; the engines are the RTL twins
of the command-level golden executor (``golden/executor.py``), and ``sim/op_bench.py``
checks each against it (``sim/test_op_<name>.py``).

Each engine module exports ``expected_cycles(...)``, its cycle count without memory
stalls. Adding an opcode: its row in ``golden.isa.CONTRACTS`` (and its ``ARGS`` layout),
its golden function (``golden.executor.Executor._op_<name>``), its engine here (listed in
``hw.accel.ENGINES``) and its test file ``sim/test_op_<name>.py``.
"""
