"""The ground floor: the typed config schema, errors, the run folder (RunDir), conversations, and small
helpers every stage uses. Imports nothing above itself."""
