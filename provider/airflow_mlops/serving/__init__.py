"""What runs beside a served model in the control plane: request pre-processing (feature lookup)."""
