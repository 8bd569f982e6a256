"""`python -m graphc info`: the environment report for bug reports."""
import sys

from .info import info

USAGE = "usage: python -m graphc info    (versions, BLAS, kernel cache, backends, GPU)"


def main(argv: list[str]) -> int:
    """Run the command named in argv; print the usage for anything else."""
    if argv == ["info"]:
        print(info())
        return 0
    print(USAGE, file=sys.stderr)
    return 0 if argv in (["-h"], ["--help"]) else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
