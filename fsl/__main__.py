"""`python -m fsl` behaves like the `fsl` command (and is what torchrun and MLproject call)."""

from fsl.cli import main

if __name__ == "__main__":
    main()
