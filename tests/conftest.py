import pytest

from tests.helpers import make_folder


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "data", {"task1": 40, "task2": 30, "task3": 30})
