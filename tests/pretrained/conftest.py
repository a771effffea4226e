"""The parity tests' raw inputs (a PNG, a WAV, strings), written once per session by inputs.py."""
import pytest

import inputs


@pytest.fixture(scope="session")
def raw_inputs(tmp_path_factory) -> dict:
    """{'image': PNG path, 'audio': WAV path, 'texts': JSON path} in a session temp folder."""
    return inputs.write(str(tmp_path_factory.mktemp("inputs")))
