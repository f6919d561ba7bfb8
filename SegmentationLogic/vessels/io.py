"""Reading and writing the vessel masks (placeholder, completed below)."""
from ..errors import InputImageError


class VesselInputError(InputImageError):
    """A vessel or support mask cannot be used as given (empty, missing, other geometry)."""
