// Command fleetsim runs thousands of real device agents through an MDM
// authority migration against the management service and reports how the
// fleet moved. The simulator itself is not built yet; until it is, the
// command says so and points at what works today.
package main

import (
	"fmt"
	"os"

	flag "github.com/spf13/pflag"
)

func main() {
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: fleetsim [flags]\n\n"+
			"Runs the default authority migration (office365 to intune) over a simulated fleet.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	fmt.Fprint(os.Stderr, `fleetsim: the fleet simulator is not built yet.
What works today: the management service (go run ./cmd/mdm-broker serve, see
README "Running the service"), a test device (go run ./scripts/testdevice),
and the wire protocol with its specification (protocol/README.md).
`)
	os.Exit(1)
}
