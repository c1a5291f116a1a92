package broker

import (
	"fmt"
	"reflect"
	"time"
	"unsafe"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// housekeepingEvery is how often the embedded broker looks for expired
// sessions, in-flight messages, retained messages and delayed wills.
//
// mochi does each of these every second, and two of them start by copying
// its whole client map: at 100,000 connected devices that is two maps of
// 100,000 entries a second, which took an eighth of the broker's CPU in
// the simulator's migration burst and fed the garbage collector. The
// service sets no retained messages and no wills, and the expiries that
// remain are a day (in-flight messages) or never (sessions), so a minute
// late is no loss.
const housekeepingEvery = time.Minute

// slowHousekeeping sets mochi's housekeeping tickers to every. mochi has
// no option for them, so it reaches them by name in its unexported event
// loop; any change of that layout in a new mochi version is an error here
// (NewBroker logs it, and TestSlowHousekeeping fails), not a silent no-op.
func slowHousekeeping(s *mqtt.Server, every time.Duration) error {
	loop := reflect.ValueOf(s).Elem().FieldByName("loop")
	if !loop.IsValid() || loop.Kind() != reflect.Pointer || loop.IsNil() || loop.Type().Elem().Kind() != reflect.Struct {
		return fmt.Errorf("mochi's server has no event loop named loop: update slowHousekeeping for this mochi version")
	}
	tickerType := reflect.TypeFor[*time.Ticker]()
	for _, name := range []string{"clientExpiry", "inflightExpiry", "retainedExpiry", "willDelaySend"} {
		f, ok := loop.Type().Elem().FieldByName(name)
		if !ok || f.Type != tickerType {
			return fmt.Errorf("mochi's event loop has no ticker %s: update slowHousekeeping for this mochi version", name)
		}
		t := *(**time.Ticker)(unsafe.Add(loop.UnsafePointer(), f.Offset))
		if t == nil {
			return fmt.Errorf("mochi's event loop ticker %s is nil: update slowHousekeeping for this mochi version", name)
		}
		t.Reset(every)
	}
	return nil
}
