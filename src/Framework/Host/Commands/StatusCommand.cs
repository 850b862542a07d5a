using System.Text.Json;
using Vism.Host.Composition;
using Vism.Host.Config;
using Vism.Host.Status;

namespace Vism.Host.Commands;

/// <summary>How <c>vism status</c> prints.</summary>
public enum StatusFormat
{
    /// <summary>For people.</summary>
    Text,

    /// <summary>The report as JSON; an error object when no host answers.</summary>
    Json,

    /// <summary>Prometheus text exposition format (metric names <c>vism_...</c>).</summary>
    Prometheus,
}

/// <summary><c>vism status</c> and <c>vism reload</c>: requests to a running host's status socket.</summary>
public static class StatusCommand
{
    public static Task<int> RunAsync(string? stateDir, string? configFile, StatusFormat format, TextWriter output, TextWriter error, CancellationToken ct)
    {
        if (ResolveStateDirectory(stateDir, configFile, error) is not string dir) return Task.FromResult(ExitCodes.BadConfig);
        string path = Path.Combine(dir, StatusSocket.FileName);
        string? text = StatusSocket.TryRead(path, TimeSpan.FromSeconds(5));
        if (text is null)
        {
            string message = $"no host is running with state directory {dir} (nothing answers on {path})";
            if (format == StatusFormat.Json)
                output.WriteLine(JsonSerializer.Serialize(new { Error = "no-host", Message = message, StateDirectory = dir, Socket = path }, StatusReport.Json));
            else if (format == StatusFormat.Prometheus)
                output.Write(Prometheus.NoHost());
            error.WriteLine($"vism: {message}");
            return Task.FromResult(ExitCodes.Failed);
        }
        if (format == StatusFormat.Json)
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
        if (format == StatusFormat.Prometheus) output.Write(Prometheus.Format(report));
        else Print(report, output);
        return Task.FromResult(ExitCodes.Ok);
    }

    /// <summary><c>vism reload</c>: asks the running host to re-read its config; prints what changed.</summary>
    public static Task<int> ReloadAsync(string? stateDir, string? configFile, TextWriter output, TextWriter error, CancellationToken ct)
    {
        if (ResolveStateDirectory(stateDir, configFile, error) is not string dir) return Task.FromResult(ExitCodes.BadConfig);
        string path = Path.Combine(dir, StatusSocket.FileName);
        string? text = StatusSocket.TryRead(path, TimeSpan.FromSeconds(120), "reload");
        if (text is null)
        {
            error.WriteLine($"vism: no host is running with state directory {dir} (nothing answers on {path})");
            return Task.FromResult(ExitCodes.Failed);
        }
        ReloadResult? result = null;
        try
        {
            result = JsonSerializer.Deserialize<ReloadResult>(text, StatusReport.Json);
        }
        catch (JsonException)
        {
        }
        if (result is null)
        {
            error.WriteLine($"vism: the host on {path} answered: {text}");
            return Task.FromResult(ExitCodes.Failed);
        }
        (result.Ok ? output : error).WriteLine($"vism: reload {(result.Ok ? "applied" : "not applied")}: {result}");
        foreach (string e in result.Errors) error.WriteLine(e);
        return Task.FromResult(result.Ok ? ExitCodes.Ok : ExitCodes.Failed);
    }

    /// <summary>The state directory: the option's, else the config file's, else the default; null (errors printed) when the config is invalid.</summary>
    private static string? ResolveStateDirectory(string? stateDir, string? configFile, TextWriter error)
    {
        if (stateDir is not null || configFile is null) return stateDir ?? HostSettings.DefaultStateDirectory;
        ConfigLoader loader = ConfigLoader.Parse(configFile);
        if (!loader.Errors.Any) return loader.Host.StateDirectory;
        foreach (ConfigError e in loader.Errors.Sorted()) error.WriteLine(e);
        return null;
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
