"""The bounds every entrance checks against, defined once (no imports: the CLI reads them before loading numpy).

The CLI's option types, the library's `Router.options`, `models add`, the manifest schema and the gateway's
config all refuse the same values because they read them from here."""

MAX_LAMBDA = 1e9  # lambda, a preset's lambda, the manifest's default
MAX_COST_USD = 1e6  # a per-query budget, an observed cost in feedback
MAX_PRICE_PER_MTOK = 1e6  # a model's price, USD per million tokens
MAX_QUESTION_CHARS = 20_000  # longer questions are truncated (the text encoder reads its first tokens anyway)
MAX_PRIOR_COEF = 100.0  # an added model's local prior: intercept and slope (manifest `added_with.local_prior`)
