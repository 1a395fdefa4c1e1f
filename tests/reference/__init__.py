"""Plain-autograd references written from the papers' equations and the authors' released code: each recomputes
every loss over its span from detached inputs, takes its own SGD and EMA steps, and imports nothing from
pipelocal.runtime or pipelocal.schedules (their step machinery is what these references check)."""
