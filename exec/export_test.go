package exec

// ContainerConfig and ContainerConfigFor expose the container settings to the
// external tests.
var (
	ContainerConfig    = containerConfig
	ContainerConfigFor = containerConfigFor
)
