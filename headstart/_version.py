"""headstart's version, in a module of its own so that the modules that stamp it (bundle.py, methods/pretrain.py,
restore.py) need not import the package's face, which imports them."""

__version__ = "0.1.0"
