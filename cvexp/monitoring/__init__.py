"""Monitoring: drift of inputs and predictions between a reference set and a current batch."""
