"""The board driver's ``pynq`` transport: a KV260 running Kria-PYNQ.

    dev = BoardDevice("kv260", transport="pynq", bitstream="/path/ternary_accel.bit")

``pynq`` is imported here and nowhere else (``pip install .[board]`` on the board; it is
not a dependency of the package: it pins numpy < 2 and only works on a board). Without it
the transport is one ``TransportError`` line.

* ``pynq.Overlay(bitstream)`` downloads the ``.bit`` with its ``.hwh`` beside it (written
  by ``make bitstream``; ``hw/vivado.py``); the accelerator is the cell
  ``hw.vivado.ACCEL_CELL`` of the block design, and its register block the address the
  ``.hwh`` gives it (``hw.vivado.CSR_BASE`` in the generated design: a different one is
  used as given and reported by ``describe``).
* CSRs: ``pynq.MMIO`` over the register block.
* Memory: ``pynq.allocate`` (CMA: physically contiguous, cacheable): ``device_address``
  is the bus address; ``flush()`` / ``invalidate()`` of a slice of the buffer are the
  sync calls (a slice of a PynqBuffer keeps its offset into the buffer).
* ``wait``: through the interrupt when the overlay routes the accelerator's ``irq`` to an
  AXI interrupt controller PYNQ knows (``pynq.Interrupt``, as the generated block design
  does: ``irq`` -> ``axi_intc`` -> ``pl_ps_irq0``), else by polling ``poll()`` with a
  growing sleep (20 us to 1 ms).
* ``hard_reset``: download the bitstream again (it resets the programmable logic; the CMA
  buffer and its contents are the DRAM's and stay).

None of this has run here: it needs the board (README, "Run on a KV260").
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from golden.config import AccelConfig, design_point
from host.backends.board import DmaBuffer, Transport, TransportError

BOARD_HINT = "on a KV260 with Kria-PYNQ: pip install .[board] (README, 'Run on a KV260')"


def _pynq():
    try:
        import pynq
    except ModuleNotFoundError as e:
        if e.name != "pynq":
            raise
        raise TransportError(
            f"transport pynq: the pynq package is not installed ({BOARD_HINT}); without a "
            "board use --transport verilator"
        ) from None
    return pynq


def default_bitstream(dp: AccelConfig) -> Path:
    """Where ``make bitstream`` / ``make board-image`` put the design point's ``.bit``."""
    from hw.vivado import bitstream_path

    return bitstream_path(dp.name)


class PynqTransport(Transport):
    name = "pynq"

    def __init__(
        self,
        dp: AccelConfig | str,
        bitstream: str | Path | None = None,
        use_interrupt: bool = True,
    ):
        from hw.vivado import ACCEL_CELL, CSR_BASE, IRQ_PIN

        dp = design_point(dp) if isinstance(dp, str) else dp
        self.dp = dp
        pynq = _pynq()
        bit = Path(bitstream) if bitstream is not None else default_bitstream(dp)
        if not bit.is_file():
            raise TransportError(
                f"bitstream {bit} does not exist (make bitstream BOARD={dp.name} builds it "
                "with Vivado; make board-image bundles it)"
            )
        if not bit.with_suffix(".hwh").is_file():
            raise TransportError(
                f"{bit.with_suffix('.hwh')} is missing: PYNQ needs it beside the .bit"
            )
        self._pynq, self.bitstream = pynq, bit
        try:
            self.overlay = pynq.Overlay(str(bit))
        except Exception as e:  # PYNQ's own errors are of many kinds
            raise TransportError(f"pynq.Overlay({bit}): {e}") from None
        ip = self.overlay.ip_dict.get(ACCEL_CELL)
        if ip is None:
            raise TransportError(
                f"{bit.with_suffix('.hwh')} has no cell {ACCEL_CELL!r} (cells: "
                f"{', '.join(sorted(self.overlay.ip_dict)) or 'none'})"
            )
        self.csr_base = int(ip["phys_addr"])
        self.csr_expected = CSR_BASE
        self.mmio = pynq.MMIO(self.csr_base, int(ip.get("addr_range", 4096)))
        self._irq = self._loop = None
        if use_interrupt and IRQ_PIN in getattr(self.overlay, "interrupt_pins", {}):
            self._irq = pynq.Interrupt(IRQ_PIN)
        self._buf = None

    def describe(self) -> str:
        note = "" if self.csr_base == self.csr_expected else f", not 0x{self.csr_expected:x}"
        return f"the pynq transport ({self.bitstream.name}, CSRs at 0x{self.csr_base:x}{note})"

    def read32(self, offset: int) -> int:
        return int(self.mmio.read(int(offset))) & 0xFFFF_FFFF

    def write32(self, offset: int, value: int) -> None:
        self.mmio.write(int(offset), int(value) & 0xFFFF_FFFF)

    def allocate(self, nbytes: int) -> DmaBuffer:
        import numpy as np

        try:
            pb = self._pynq.allocate(shape=(int(nbytes),), dtype=np.uint8)
        except Exception as e:
            raise TransportError(
                f"cannot allocate {nbytes} bytes of contiguous memory (pynq.allocate: {e}); "
                "lower mem_size or enlarge the CMA pool (cma= on the kernel command line)"
            ) from None
        self._buf = DmaBuffer(pb, int(pb.device_address), handle=pb)
        return self._buf

    def sync_to_device(self, buf: DmaBuffer, lo: int, hi: int) -> None:
        if hi > lo:
            buf.handle[lo:hi].flush()

    def sync_from_device(self, buf: DmaBuffer, lo: int, hi: int) -> None:
        if hi > lo:
            buf.handle[lo:hi].invalidate()

    def wait(self, timeout_s: float, poll) -> bool:
        deadline = time.monotonic() + timeout_s
        if poll():
            return True
        if self._irq is not None:
            try:
                return self._wait_interrupt(timeout_s) or poll()
            except Exception as e:  # an interrupt path that does not work: poll from now on
                print(f"board: interrupt wait failed ({e}); polling instead", file=sys.stderr)
                self._irq = None
        sleep = 20e-6
        while time.monotonic() < deadline:
            time.sleep(sleep)
            if poll():
                return True
            sleep = min(sleep * 2, 1e-3)
        return poll()

    def _wait_interrupt(self, timeout_s: float) -> bool:
        """pynq.Interrupt.wait on one event loop kept for it (PYNQ's events bind to it)."""
        import asyncio

        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(asyncio.wait_for(self._irq.wait(), timeout_s))
        except TimeoutError:
            return False
        return True

    def hard_reset(self) -> None:
        self.overlay.download()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        if self._buf is not None:
            try:
                self._buf.handle.freebuffer()
            except Exception:  # freeing twice or after the overlay went: nothing to do
                pass
            self._buf = None
