using System.Globalization;
using System.Text;
using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Conformance.Composition;
using Vism.Core;
using Vism.Driver;
using Vism.Host.Config;
using Vism.Host.Plugins;

namespace Vism.Host.Composition;

/// <summary>An option <c>vism matrix</c> sets in the section of one plugin kind.</summary>
/// <param name="Kind">The plugin kind name, e.g. <c>vhost-user</c>.</param>
/// <param name="Key">The option's TOML key, e.g. <c>vectors</c>.</param>
/// <param name="Value">The value as a TOML literal, e.g. <c>4</c> or <c>"/dev/shm/x"</c>.</param>
public sealed record KindOption(string Kind, string Key, string Value)
{
    /// <summary>Parses <c>KIND.KEY=VALUE</c> (the value a TOML literal; a bare word is taken as a string).</summary>
    /// <param name="text">The text.</param>
    /// <param name="option">The option.</param>
    /// <returns>Whether it parsed.</returns>
    public static bool TryParse(string text, out KindOption? option)
    {
        option = null;
        int eq = text.IndexOf('=', StringComparison.Ordinal);
        int dot = eq < 0 ? -1 : text.LastIndexOf('.', eq);
        if (dot <= 0 || eq <= dot + 1 || eq == text.Length - 1)
            return false;
        string value = text[(eq + 1)..].Trim();
        bool literal = value.StartsWith('"') || value is "true" or "false" || long.TryParse(value, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out _);
        option = new KindOption(text[..dot].Trim(), text[(dot + 1)..eq].Trim(), literal ? value : $"\"{value.Replace("\\", "\\\\").Replace("\"", "\\\"")}\"");
        return true;
    }

    /// <summary>Later options for the same kind and key replace earlier ones.</summary>
    /// <param name="options">Options in order of precedence (lowest first).</param>
    /// <returns>The merged list.</returns>
    public static IReadOnlyList<KindOption> Merge(IEnumerable<KindOption> options) =>
        [.. options.GroupBy(o => (o.Kind, o.Key)).Select(g => g.Last())];
}

/// <summary>
/// The composer behind <c>vism matrix</c>: for each composition it writes a TOML config (a host
/// section with a fresh state and socket directory, one <c>[[device]]</c> per device with the
/// combination's kinds and their options), loads and validates it exactly as <c>vism run</c> does
/// against the installed plugins, and starts it with <see cref="HostRuntime"/>. Plugin validation
/// errors (no huge pages reserved, ...) make the combination unavailable with the plugin's own message.
/// </summary>
public sealed partial class MatrixComposer(PluginCatalog catalog, ILoggerFactory logs, IReadOnlyList<KindOption> options) : IComposer
{
    [System.Text.RegularExpressions.GeneratedRegex(@"^device\[\d+\]\.")]
    private static partial System.Text.RegularExpressions.Regex DeviceIndex();

    /// <inheritdoc />
    public IReadOnlyList<string> Kinds(PluginKind kind) => catalog.Names(kind);

    /// <inheritdoc />
    public async Task<IComposition> ComposeAsync(Combination combination, HostSpec spec, CancellationToken cancellation)
    {
        PluginRegistration transport = Find(PluginKind.Transport, combination.Transport);
        PluginRegistration memory = Find(PluginKind.Memory, combination.Memory);
        if (combination.HasEvents)
            Find(PluginKind.Events, combination.Events);
        IDriverConnector connector = DriverConnectors.Find(transport.Name, transport.Implementation.Assembly)
            ?? throw new CompositionUnavailableException($"transport kind '{transport.Name}' (plugin {transport.Plugin.Name}) has no driver connector",
                "ship a public Vism.Driver.IDriverConnector for it in the plugin assembly (see README, \"Testing a plugin\")");
        if (spec.Persist && !memory.Options.TryGet("persist", out _))
            throw new CompositionUnavailableException($"memory kind '{memory.Name}' has no persist option", "give the memory plugin a `persist` (bool) option to run the persistence checks")
            { NotApplicable = true };
        if (spec.MemoryCapacity is not null && !memory.Options.TryGet("capacity", out _))
            throw new CompositionUnavailableException($"memory kind '{memory.Name}' has no capacity option",
                "give the memory plugin's options a `capacity` (bytes) setting to run the capacity checks");

        DirectoryInfo scratch = Directory.CreateTempSubdirectory("vism-m-");
        try
        {
            string file = Path.Combine(scratch.FullName, "matrix.toml");
            await File.WriteAllTextAsync(file, Toml(combination, spec, scratch.FullName), cancellation).ConfigureAwait(false);
            ConfigLoader loader = ConfigLoader.Parse(file);
            VismConfig config = loader.BindDevices(catalog)
                ?? throw new CompositionUnavailableException(
                    $"the combination's config is refused: {string.Join("; ", loader.Errors.Sorted().Select(e => $"{DeviceIndex().Replace(e.Key, "")}: {e.Message}").Distinct())}",
                    "make the machine meet the plugin's requirements (see its README or `vism plugins`), or pass --option KIND.KEY=VALUE");
            HostRuntime runtime = await HostRuntime.StartAsync(config, logs, serveStatus: false).ConfigureAwait(false);
            var devices = runtime.Devices.Select(d => new ComposedDevice(
                d.Device ?? throw new InvalidOperationException($"device {d.Settings.Name} did not start"), connector, d.DriverTarget())).ToList();
            return new Composition(runtime, devices, scratch.FullName);
        }
        catch
        {
            Delete(scratch.FullName);
            throw;
        }
    }

    private PluginRegistration Find(PluginKind kind, string name)
    {
        if (catalog.TryGet(kind, name, out PluginRegistration? registration))
            return registration;
        IReadOnlyList<string> installed = catalog.Names(kind);
        throw new CompositionUnavailableException(
            $"{PluginCatalog.Describe(kind)} kind '{name}' is not installed (installed: {(installed.Count == 0 ? "none" : string.Join(", ", installed))})",
            "install the plugin providing it (--plugins DIR)");
    }

    /// <summary>The config file for one composition.</summary>
    internal string Toml(Combination combination, HostSpec spec, string scratch)
    {
        var toml = new StringBuilder();
        toml.AppendLine("# written by vism matrix for " + combination);
        toml.AppendLine("[host]");
        toml.AppendLine($"state-dir = {Quote(spec.StateDirectory ?? Path.Combine(scratch, "state"))}");
        toml.AppendLine($"socket-dir = {Quote(scratch)}");
        toml.AppendLine($"sharing = {Quote(spec.Sharing == SharingMode.Multi ? "multi" : "pair")}");
        toml.AppendLine(CultureInfo.InvariantCulture, $"loops = {Math.Min(spec.Devices, Environment.ProcessorCount)}");
        for (int i = 0; i < spec.Devices; i++)
        {
            toml.AppendLine();
            toml.AppendLine("[[device]]");
            toml.AppendLine($"name = {Quote(spec.DeviceName(i))}");
            toml.AppendLine(CultureInfo.InvariantCulture, $"region-size = {spec.RegionSize}");
            toml.AppendLine(CultureInfo.InvariantCulture, $"window-size = {spec.WindowSize}");
            toml.AppendLine(CultureInfo.InvariantCulture, $"notify-size = {spec.NotifySize}");
            Section(toml, "transport", combination.Transport, []);
            Section(toml, "memory", combination.Memory, MemoryOverrides(combination.Memory, spec));
            if (combination.HasEvents)
                Section(toml, "events", combination.Events, []);
        }
        return toml.ToString();
    }

    private List<KindOption> MemoryOverrides(string kind, HostSpec spec)
    {
        var overrides = new List<KindOption>();
        if (spec.MemoryCapacity is ulong capacity)
            overrides.Add(new KindOption(kind, "capacity", capacity.ToString(CultureInfo.InvariantCulture)));
        if (spec.Persist)
        {
            overrides.Add(new KindOption(kind, "persist", "true"));
            if (catalog.TryGet(PluginKind.Memory, kind, out PluginRegistration? memory) && memory.Options.TryGet("directory", out _))
                overrides.Add(new KindOption(kind, "directory", Quote(DirectComposer.PersistedDirectory))); // relative: inside the state directory
        }
        return overrides;
    }

    private void Section(StringBuilder toml, string section, string kind, IReadOnlyList<KindOption> overrides)
    {
        toml.AppendLine($"[device.{section}]");
        toml.AppendLine($"kind = {Quote(kind)}");
        foreach (KindOption o in KindOption.Merge(options.Concat(overrides)).Where(o => o.Kind == kind && o.Key != "kind"))
            toml.AppendLine($"{o.Key} = {o.Value}");
    }

    private static string Quote(string s) => "\"" + s.Replace("\\", "\\\\").Replace("\"", "\\\"") + "\"";

    private static void Delete(string dir)
    {
        try
        {
            Directory.Delete(dir, recursive: true);
        }
        catch (IOException)
        {
            // A leftover temporary directory is harmless.
        }
    }

    private sealed class Composition(HostRuntime runtime, IReadOnlyList<ComposedDevice> devices, string scratch) : IComposition
    {
        public IsmHost Host => runtime.Ism;

        public IReadOnlyList<ComposedDevice> Devices => devices;

        public async ValueTask DisposeAsync()
        {
            await runtime.DisposeAsync().ConfigureAwait(false);
            Delete(scratch);
        }
    }
}
