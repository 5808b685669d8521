"""What an operator watches: one snapshot of a stack (``snapshot``), as Prometheus metrics (``metrics``) and
CloudWatch data (``cloudwatch``); ``genesis-dr status`` and ``genesis-dr metrics`` show them."""
