"""Sans-IO call control: legs, the B2BUA controller, the transfer machines.

These modules may run compiled (``telephony/native.py``): a build made from exactly these sources
is put first on this package's path; otherwise the sources below are what runs.
"""

from telephony.native import compiled_dir as _compiled_dir

if (_build := _compiled_dir("call")) is not None:
    __path__.insert(0, str(_build))
