"""An MLflow "model from code": a logistic regression scored with numpy, parameters from ``model_config``.

``flights_models.log_flights_model`` logs this file with the fitted coefficients, so loading the
model needs nothing but mlflow and numpy (no pickled class from the test modules).
``model_config["invert_where"] = {"feature": f, "equals": v}`` flips the predicted probability
on the rows where ``f == v``: a model good overall and bad for one slice.
"""

import numpy as np
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class FlightsLogistic(PythonModel):
    def load_context(self, context):
        config = context.model_config
        self.features = list(config["features"])
        self.mean = np.asarray(config["mean"], dtype=float)
        self.scale = np.asarray(config["scale"], dtype=float)
        self.coef = np.asarray(config["coef"], dtype=float)
        self.intercept = float(config["intercept"])
        self.invert_where = config.get("invert_where")

    def predict(self, context, model_input, params=None):
        x = (model_input[self.features].to_numpy(dtype=float) - self.mean) / self.scale
        probability = 1.0 / (1.0 + np.exp(-(x @ self.coef + self.intercept)))
        if self.invert_where:
            rows = model_input[self.invert_where["feature"]].to_numpy() == self.invert_where["equals"]
            probability[rows] = 1.0 - probability[rows]
        return probability


set_model(FlightsLogistic())
