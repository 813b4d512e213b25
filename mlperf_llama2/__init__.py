"""MLPerf Inference llama2-70b harness: LoadGen SUTs, generation backends, data pipeline and scoring.

The root scripts (main.py, SUT.py, dataset.py, evaluate-accuracy.py, processorca.py) are thin
command-line shells over this package.
"""

__version__ = "0.1.0"
