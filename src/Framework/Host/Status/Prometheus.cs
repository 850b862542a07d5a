using System.Globalization;
using System.Text;

namespace Vism.Host.Status;

/// <summary>
/// A status report in the Prometheus text exposition format (version 0.0.4): gauges for devices,
/// regions and memory, one counter family for every device counter. Written for node_exporter's
/// textfile collector (<c>vism status --format prometheus &gt; /var/lib/node_exporter/vism.prom</c>).
/// </summary>
public static class Prometheus
{
    /// <summary>What to write when no host answers: <c>vism_up 0</c>, so an alert can fire.</summary>
    public static string NoHost()
    {
        var o = new StringBuilder();
        Family(o, "vism_up", "gauge", "Whether a vism host answered on its status socket.");
        o.Append("vism_up 0\n");
        return o.ToString();
    }

    /// <summary>The metrics of <paramref name="r"/>.</summary>
    public static string Format(StatusReport r)
    {
        ArgumentNullException.ThrowIfNull(r);
        var o = new StringBuilder();
        Family(o, "vism_up", "gauge", "Whether a vism host answered on its status socket.");
        o.Append("vism_up 1\n");
        Family(o, "vism_info", "gauge", "The running host: version, gid and sharing mode (value always 1).");
        o.Append(CultureInfo.InvariantCulture, $"vism_info{{version=\"{Escape(r.Version)}\",gid=\"{Escape(r.Gid)}\",sharing=\"{Escape(r.Sharing)}\",pid=\"{r.Pid}\"}} 1\n");
        Family(o, "vism_start_time_seconds", "gauge", "When the host started, in seconds since the Unix epoch.");
        o.Append(CultureInfo.InvariantCulture, $"vism_start_time_seconds {r.Started.ToUnixTimeMilliseconds() / 1000.0:0.###}\n");
        Family(o, "vism_devices", "gauge", "Devices served.");
        o.Append(CultureInfo.InvariantCulture, $"vism_devices {r.Devices.Count}\n");
        Family(o, "vism_regions", "gauge", "Regions allocated in the host.");
        o.Append(CultureInfo.InvariantCulture, $"vism_regions {r.Regions.Count}\n");

        (string Name, string Type, string Help, Func<DeviceReport, double> Value)[] gauges =
        [
            ("vism_device_connected", "gauge", "Whether a driver (VMM) is connected to the device.", d => d.Connected ? 1 : 0),
            ("vism_device_regions_in_use", "gauge", "Region slots of the device in use.", d => d.RegionsInUse),
            ("vism_device_max_regions", "gauge", "Region slots of the device.", d => d.MaxRegions),
            ("vism_device_memory_capacity_bytes", "gauge", "Memory the device's backend may hand out.", d => d.MemoryCapacity),
            ("vism_device_memory_used_bytes", "gauge", "Memory of the device's backend in use.", d => d.MemoryUsed),
            ("vism_device_memory_high_water_bytes", "gauge", "Most memory of the device's backend ever in use.", d => d.MemoryHighWater),
        ];
        foreach ((string name, string type, string help, Func<DeviceReport, double> value) in gauges)
        {
            Family(o, name, type, help);
            foreach (DeviceReport d in r.Devices)
                o.Append(CultureInfo.InvariantCulture, $"{name}{{device=\"{Escape(d.Name)}\"}} {value(d)}\n");
        }
        Family(o, "vism_device_events_total", "counter", "Device counters (requests, errors by reason, connects, ...) by name.");
        foreach (DeviceReport d in r.Devices)
            foreach ((string counter, long value) in d.Counters.OrderBy(c => c.Key, StringComparer.Ordinal))
                o.Append(CultureInfo.InvariantCulture, $"vism_device_events_total{{device=\"{Escape(d.Name)}\",counter=\"{Escape(counter)}\"}} {value}\n");
        return o.ToString();
    }

    private static void Family(StringBuilder o, string name, string type, string help) =>
        o.Append("# HELP ").Append(name).Append(' ').Append(help).Append('\n')
         .Append("# TYPE ").Append(name).Append(' ').Append(type).Append('\n');

    private static string Escape(string value) => value.Replace("\\", "\\\\", StringComparison.Ordinal)
        .Replace("\"", "\\\"", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal);
}
