"""Use cases as plain typed functions over the ports: lab VMs now; backup, restore, snapshots
later. Imports vmkeep.ports and vmkeep.domain only, never a concrete driver."""
