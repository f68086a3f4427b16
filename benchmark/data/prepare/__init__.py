"""Converters from published data layouts to the MVTec layout the readers share."""
