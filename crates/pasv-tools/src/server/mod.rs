//! The FTP server behind `pasvd` (under construction).
