package worker

// ConnectRole is the role of DialInContainer's child: the first argument
// of its command line, its socket's path the second.
var ConnectRole = connect.Role()
