"""bat: Backbone Augmented Training for adaptations, as a reproducible compendium.

The notebooks in ``notebooks/`` only set parameters, call this package, plot and save.
"""

__version__ = "0.1.0"
