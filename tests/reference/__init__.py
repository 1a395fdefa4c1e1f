"""Plain-autograd references written from the papers' equations and the authors' released code: mlaan.py (MLAAN's
cascade and EMA) and local.py (greedy, DGL and InfoPro with periodic global guidance, sync and async). Each takes
every loss's gradient over its span only, its own SGD (and EMA) steps, and imports nothing from pipelocal.runtime or
pipelocal.schedules (their step machinery is what these references check)."""
