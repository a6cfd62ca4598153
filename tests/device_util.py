"""What the device tests (tests/test_device_*.py) share: putting operands and command
streams into a device's memory."""

from golden import isa


def put(dev, data, align=None) -> int:
    """``data`` (bytes or an array) in freshly allocated device memory; its address."""
    nbytes = len(data) if isinstance(data, (bytes, bytearray)) else data.nbytes
    addr = dev.alloc(nbytes) if align is None else dev.alloc(nbytes, align)
    dev.write(addr, data)
    return addr


def put_stream(dev, cmds) -> tuple[int, int]:
    """A command stream (commands, or the encoded bytes) in device memory: (address, count),
    the arguments of ``dev.run``."""
    buf = cmds if isinstance(cmds, (bytes, bytearray)) else isa.encode_stream(cmds)
    return put(dev, buf, isa.STREAM_ALIGN), len(buf) // isa.COMMAND_BYTES


def put_tlmm(dev, x, w) -> tuple[int, int, int]:
    """The operands of TLMM y = x @ w^T (x int8 [rows, k], w ternary [n, k], packed for the
    device's TLMM) in device memory, and room for y (int32): (src, weights, dst)."""
    xa = put(dev, x)
    wa = put(dev, isa.pack_tlmm_weights(w, dev.cfg.tlmm))
    return xa, wa, dev.alloc(x.shape[0] * w.shape[0] * 4)
