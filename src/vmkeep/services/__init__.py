"""The composition root: reads configuration, picks concrete drivers for the ports and hands
them to the engine. The only package that names vmkeep.drivers."""
