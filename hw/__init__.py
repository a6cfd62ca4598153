"""Amaranth RTL: one component per datapath block, the op engines, the top and its shell."""

import time

# When this process loaded the RTL: a source file edited later is not what its modules (and
# the Verilog it exports) are made of (host.backends.harness_build keys builds on the files).
LOADED_AT = time.time()
