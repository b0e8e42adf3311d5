"""bmcore: the library behind the bone marrow cell classifier.

No Streamlit import anywhere in this package: the app (``app.py`` + ``views/``) and the
training pipeline (``train/``) both sit on top of it, so a trained model is preprocessed,
loaded and explained in exactly one way.
"""

__version__ = "0.1.0"

RUO_STATEMENT = "For research use only. Not for use in diagnostic procedures."

import threading as _threading

# Lazy imports of the libraries that pull in scikit-learn (pytorch-grad-cam; the smear-field scorer's pickle) run one
# thread at a time: in the app the Grad-CAM warm-up thread and a field upload imported scikit-learn at once, and one of
# them got a partially initialised module ("cannot import name 'clone' from partially initialized module
# 'sklearn.base'", a CI run of 2026-11-27).
IMPORT_LOCK = _threading.RLock()
