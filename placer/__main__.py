"""``python -m placer`` runs the command line, like the ``moeplace`` console script."""

from placer.cli.main import main

if __name__ == "__main__":
    main()
