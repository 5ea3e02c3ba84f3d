"""Training: ``recipe.run`` reads top to bottom (config -> data -> model -> trainer -> run folder); the
rest are its parts: methods, accelerators, attention, collators, callbacks, faults, trackers."""
