"""Real-time scoring: ONNX models corrected online by River learners from delayed labels.

Pure, like the feature core: no Faust import below this package. ``engine.Scorer`` turns the
users a micro-batch touched into output messages; the worker's agent and offline evaluation
both run it, so what is measured offline is what the worker publishes.
"""
