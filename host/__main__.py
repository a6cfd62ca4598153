import sys

if sys.argv[1:2] == ["convert"]:  # python -m host convert SRC DST (host.convert)
    from .convert import main

    sys.exit(main(sys.argv[2:]))

from .cli import main  # noqa: E402

sys.exit(main())
