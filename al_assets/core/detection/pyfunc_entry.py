"""MLflow models-from-code entry point: the registered pyfunc is this file, not a pickle."""

from mlflow.models import set_model

from al_assets.core.detection.pyfunc import DetectionModel

set_model(DetectionModel())
