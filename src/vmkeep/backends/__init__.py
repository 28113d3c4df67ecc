"""ObjectStore implementations: a local directory, S3 (the only place importing boto3), and
memory; plus wrappers (retry, rate limit) that add behaviour around any store. Imports
vmkeep.ports and vmkeep.domain only."""
