"""bmcore: the library behind the bone marrow cell classifier.

No Streamlit import anywhere in this package: the app (``app.py`` + ``views/``) and the
training pipeline (``train/``) both sit on top of it, so a trained model is preprocessed,
loaded and explained in exactly one way.
"""

__version__ = "0.1.0"

RUO_STATEMENT = "For research use only. Not for use in diagnostic procedures."
