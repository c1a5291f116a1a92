package fleetsim

import (
	"fmt"
	"image/color"
	"io"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// WritePlot draws the timeline as a PNG chart for a migration plan: the
// devices on each authority, those holding redundant profiles and those
// facing a protection gap, over virtual hours, with the authority change
// and the APNs upload marked.
func (r *Report) WritePlot(w io.Writer) error {
	if len(r.Timeline) == 0 {
		return fmt.Errorf("plot: the timeline is empty")
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s: %d devices (seed %d)", r.Scenario, r.Devices, r.Seed)
	p.X.Label.Text = "virtual days since the start"
	p.Y.Label.Text = "devices"
	p.Legend.Top = true
	p.Legend.Left = true
	p.Add(plotter.NewGrid())

	series := []struct {
		name  string
		value func(*Sample) int
		color color.RGBA
		dash  bool
	}{
		{"on " + orUnknown(r.Authority.From), func(s *Sample) int { return s.ByAuthority[r.Authority.From] }, color.RGBA{R: 0xd8, G: 0x3b, B: 0x01, A: 0xff}, false},
		{"on " + orUnknown(r.Authority.To), func(s *Sample) int { return s.ByAuthority[r.Authority.To] }, color.RGBA{R: 0x00, G: 0x78, B: 0xd4, A: 0xff}, false},
		{"with redundant profiles", func(s *Sample) int { return s.RedundantDevices }, color.RGBA{R: 0x88, G: 0x88, B: 0x88, A: 0xff}, true},
		{"facing a protection gap", func(s *Sample) int { return s.GapDevices }, color.RGBA{R: 0xa4, G: 0x26, B: 0x2c, A: 0xff}, true},
	}
	for _, s := range series {
		pts := make(plotter.XYs, len(r.Timeline))
		for i := range r.Timeline {
			pts[i].X = float64(r.Timeline[i].T) / 86400
			pts[i].Y = float64(s.value(&r.Timeline[i]))
		}
		line, err := plotter.NewLine(pts)
		if err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		line.Color = s.color
		line.Width = vg.Points(1.5)
		if s.dash {
			// Wider, so that they show where they coincide with a
			// solid line.
			line.Width = vg.Points(2.5)
			line.Dashes = []vg.Length{vg.Points(5), vg.Points(5)}
		}
		p.Add(line)
		p.Legend.Add(s.name, line)
	}
	marks := []struct {
		at   int64
		name string
	}{{r.Authority.ChangedAt, "authority change"}, {r.Migration.APNsUploadedAtSec, "APNs upload"}}
	for _, m := range marks {
		if m.at <= 0 {
			continue
		}
		x := float64(m.at) / 86400
		line, err := plotter.NewLine(plotter.XYs{{X: x, Y: 0}, {X: x, Y: float64(r.Devices)}})
		if err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		line.Color = color.RGBA{A: 0x80}
		line.Dashes = []vg.Length{vg.Points(1), vg.Points(2)}
		p.Add(line)
		p.Legend.Add(fmt.Sprintf("%s (%s)", m.name, secs(m.at)), line)
	}
	// Headroom above the fleet for the legend.
	p.Y.Min, p.Y.Max = 0, float64(r.Devices)*1.45
	c := vgimg.New(vg.Points(900), vg.Points(450))
	p.Draw(draw.New(c))
	if _, err := (vgimg.PngCanvas{Canvas: c}).WriteTo(w); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	return nil
}

func orUnknown(a string) string {
	if a == "" {
		return "unknown"
	}
	return a
}
