"""Study notebooks: quantization, approximation and analog NL-ADC error of the datapath.

The notebooks are jupytext percent scripts (``notebooks/<name>.py``, the source of
truth). ``python -m notebooks.run`` (``make notebooks``) executes each one into
``build/notebooks/<name>.ipynb`` plus its PNG figures; ``notebooks/README.md`` says how
to open them interactively. ``notebooks/lib.py`` holds the helpers they share.
"""
