"""Pure values and rules: models, errors, units. Imports nothing of vmkeep outside this package,
reads no clock, environment or file. Everything here can be unit-tested without a machine."""
