//! TODO(helper): the simulator
