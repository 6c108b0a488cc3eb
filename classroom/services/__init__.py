"""Every state change of the classroom goes through a service here (`<entity>_<action>`)."""
