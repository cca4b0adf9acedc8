//! pasv tools library (under construction).
