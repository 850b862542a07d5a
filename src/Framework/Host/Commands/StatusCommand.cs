using System.Text.Json;
using Vism.Host.Config;
using Vism.Host.Status;

namespace Vism.Host.Commands;

/// <summary><c>vism status</c>: reads a running host's status socket and prints it.</summary>
public static class StatusCommand
{
    public static Task<int> RunAsync(string? stateDir, string? configFile, bool json, TextWriter output, TextWriter error, CancellationToken ct)
    {
        string dir = stateDir ?? HostSettings.DefaultStateDirectory;
        if (stateDir is null && configFile is not null)
        {
            ConfigLoader loader = ConfigLoader.Parse(configFile);
            if (loader.Errors.Any)
            {
                foreach (ConfigError e in loader.Errors.Sorted()) error.WriteLine(e);
                return Task.FromResult(ExitCodes.BadConfig);
            }
            dir = loader.Host.StateDirectory;
        }
        string path = Path.Combine(dir, StatusSocket.FileName);
        string? text = StatusSocket.TryRead(path, TimeSpan.FromSeconds(5));
        if (text is null)
        {
            error.WriteLine($"vism: no host is running with state directory {dir} (nothing answers on {path})");
            return Task.FromResult(ExitCodes.Failed);
        }
        if (json)
        {
            output.WriteLine(text);
            return Task.FromResult(ExitCodes.Ok);
        }
        StatusReport? report;
        try
        {
            report = JsonSerializer.Deserialize<StatusReport>(text, StatusReport.Json);
        }
        catch (JsonException ex)
        {
            error.WriteLine($"vism: the host on {path} sent an unreadable report: {ex.Message}");
            return Task.FromResult(ExitCodes.Failed);
        }
        if (report is null)
        {
            error.WriteLine($"vism: the host on {path} sent an empty report");
            return Task.FromResult(ExitCodes.Failed);
        }
        Print(report, output);
        return Task.FromResult(ExitCodes.Ok);
    }

    /// <summary>The human form of a report.</summary>
    public static void Print(StatusReport r, TextWriter o)
    {
        o.WriteLine($"vism {r.Version}, pid {r.Pid}, config {r.Config}, up since {r.Started:u}");
        o.WriteLine($"gid {r.Gid}, sharing {r.Sharing}, {r.Devices.Count} device(s), {r.Regions.Count} region(s)");
        foreach (DeviceReport d in r.Devices)
        {
            o.WriteLine();
            o.WriteLine($"device {d.Name}: devid {d.DevId}, {(d.Connected ? "connected" : "not connected")}, status {d.Status}");
            o.WriteLine($"  endpoint {d.Endpoint} ({d.Transport}); memory {d.Memory}; events {d.Events ?? "none"}");
            o.WriteLine($"  regions {d.RegionsInUse}/{d.MaxRegions}; memory used {Sizes.Format(d.MemoryUsed)} of {Sizes.Format(d.MemoryCapacity)} (high water {Sizes.Format(d.MemoryHighWater)})");
            foreach ((string name, long value) in d.Counters.OrderBy(c => c.Key, StringComparer.Ordinal))
                o.WriteLine($"  {name} = {value}");
        }
        if (r.Regions.Count > 0)
        {
            o.WriteLine();
            o.WriteLine("regions:");
            foreach (RegionReport g in r.Regions)
                o.WriteLine($"  token {g.TokenHint} size {Sizes.Format(g.Size)} (backing {Sizes.Format(g.Length)}), owner devid {g.OwnerDevId}, home devid {g.HomeDevId}" +
                    (g.Recovered ? ", recovered" : "") +
                    $", referenced by {(g.References.Count == 0 ? "nobody" : string.Join(", ", g.References.Select(x => $"devid {x.DevId} at 0x{x.Offset:x}")))}");
        }
    }
}
