"""The command line: parses input, calls services and the engine, renders tables or --json.
The only place that maps VmkeepError to exit codes. May import everything below it except
vmkeep.drivers (concrete drivers are chosen in vmkeep.services)."""
