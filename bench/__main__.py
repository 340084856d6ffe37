"""``python -m bench``: run every benchmark and print the figures."""

from bench.earn_http import main

if __name__ == "__main__":
    main()
