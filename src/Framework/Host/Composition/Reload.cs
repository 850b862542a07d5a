using Vism.Host.Config;
using Vism.Native;

namespace Vism.Host.Composition;

/// <summary>What a reload did (<c>vism reload</c> prints it; SIGHUP logs it).</summary>
public sealed record ReloadResult
{
    /// <summary>Whether the new config was applied completely.</summary>
    public required bool Ok { get; init; }

    /// <summary>Devices started.</summary>
    public IReadOnlyList<string> Added { get; init; } = [];

    /// <summary>Devices stopped.</summary>
    public IReadOnlyList<string> Removed { get; init; } = [];

    /// <summary>Devices whose settings changed: stopped and started again (their regions are gone).</summary>
    public IReadOnlyList<string> Restarted { get; init; } = [];

    /// <summary>Devices left running untouched (connections, regions and tokens kept).</summary>
    public IReadOnlyList<string> Kept { get; init; } = [];

    /// <summary>Why the reload was refused, or which devices failed to start.</summary>
    public IReadOnlyList<string> Errors { get; init; } = [];

    /// <summary>A refused reload: nothing changed.</summary>
    public static ReloadResult Refused(IReadOnlyList<string> errors) => new() { Ok = false, Errors = errors };

    /// <summary>One line for the log.</summary>
    public override string ToString() =>
        Ok || Added.Count + Removed.Count + Restarted.Count > 0
            ? $"added [{string.Join(", ", Added)}], removed [{string.Join(", ", Removed)}], restarted [{string.Join(", ", Restarted)}], kept [{string.Join(", ", Kept)}]"
              + (Errors.Count > 0 ? $"; failed: {string.Join("; ", Errors)}" : "")
            : $"refused, the running devices are kept: {string.Join("; ", Errors)}";
}

/// <summary>Compares two validated configs the way a reload needs to: by every key's value.</summary>
internal static class ConfigDiff
{
    /// <summary>[host] keys a reload accepts (they change no device; the new values apply from the next start).</summary>
    private static readonly HashSet<string> ReloadableHostKeys = ["log-level", "log-format"];

    /// <summary>One message per [host] key whose change needs a restart.</summary>
    public static List<string> HostChanges(HostSettings now, HostSettings next) =>
        HostSettings.Schema.Options
            .Where(o => !ReloadableHostKeys.Contains(o.Key))
            .Select(o => (o.Key, Was: Format(o, now), Now: Format(o, next)))
            .Where(c => c.Was != c.Now)
            .Select(c => $"host.{c.Key} changed from {c.Was ?? "(default)"} to {c.Now ?? "(default)"}: this [host] key cannot change under running devices: restart vism (systemctl restart) to apply it")
            .ToList();

    /// <summary>Whether a running device with <paramref name="a"/> may keep running under <paramref name="b"/>.</summary>
    public static bool Same(DeviceSettings a, DeviceSettings b) =>
        a.Description == b.Description
        && Values(DeviceSection.Schema, a.Keys) == Values(DeviceSection.Schema, b.Keys)
        && Choice(a.Transport) == Choice(b.Transport)
        && Choice(a.Memory) == Choice(b.Memory)
        && Choice(a.Events) == Choice(b.Events);

    private static string Choice(PluginChoice? c) =>
        c is null ? "-" : $"{c.Registration.Kind}:{c.Registration.Name}:{c.Registration.Plugin.Path}:{Values(c.Registration.Options, c.Options)}";

    private static string Values(OptionsSchema schema, object options) =>
        string.Join("\n", schema.Options.Select(o => $"{o.Key}={Format(o, options)}"));

    private static string? Format(OptionInfo option, object instance) => OptionsSchema.FormatValue(option.Property.GetValue(instance));
}

/// <summary>Explanations of file-system failures an operator can act on.</summary>
internal static class Paths
{
    /// <summary>Why <paramref name="path"/> cannot be created as a directory: the first component that
    /// is missing, not a directory, or not writable, and what to do about it.</summary>
    public static string WhyNotCreatable(string path, Exception ex)
    {
        string full = Path.GetFullPath(path);
        for (string? dir = full; dir is not null; dir = Path.GetDirectoryName(dir))
        {
            if (Directory.Exists(dir))
            {
                if (dir == full) return ex.Message;
                return Mono.Unix.Native.Syscall.access(dir, Mono.Unix.Native.AccessModes.W_OK) != 0
                    ? $"{dir} is not writable by uid {Mono.Unix.Native.Syscall.geteuid()} (permission denied): create {full} beforehand with an owner vism may write as, or run vism under systemd with RuntimeDirectory=/StateDirectory= (packaging/systemd)"
                    : $"{ex.Message} (the parent {dir} exists and is writable)";
            }
            if (new FileInfo(dir).LinkTarget is string target)
                return $"{dir} is a symbolic link to {target}, which does not exist or is not a directory";
            if (File.Exists(dir))
                return $"{dir} is a file, not a directory: choose another path or remove the file";
        }
        return ex.Message;
    }
}
