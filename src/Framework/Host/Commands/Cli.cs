using System.CommandLine;
using System.Reflection;
using Microsoft.Extensions.Logging;
using Vism.Host.Composition;
using Vism.Host.Config;
using Vism.Host.Plugins;

namespace Vism.Host.Commands;

/// <summary>Exit codes of the <c>vism</c> command.</summary>
public static class ExitCodes
{
    /// <summary>Success (also: stopped cleanly by SIGINT/SIGTERM).</summary>
    public const int Ok = 0;

    /// <summary>A device could not start, a demo step failed, or no host is running (status).</summary>
    public const int Failed = 1;

    /// <summary>The config file is invalid; nothing was started.</summary>
    public const int BadConfig = 2;
}

/// <summary>The <c>vism</c> command line: run, validate, plugins, status, demo, matrix, --version, --help.</summary>
public static class Cli
{
    /// <summary>Builds the command tree writing to <paramref name="output"/> and <paramref name="error"/>.</summary>
    public static RootCommand Create(TextWriter output, TextWriter error)
    {
        var plugins = new Option<string[]>("--plugins")
        {
            Description = "Another plugin directory (a plugin folder, or a folder of them); repeatable",
            Recursive = true,
            Arity = ArgumentArity.OneOrMore,
            AllowMultipleArgumentsPerToken = false,
        };
        var config = new Argument<string>("config") { Description = "The TOML config file (see config/default.toml)" };

        var root = new RootCommand(
            "vism: virtio-ism devices (shared-memory regions between VMs and containers) served from one host process.\n" +
            "Start with `vism demo config/default.toml`.");
        root.Add(plugins);
        // The default prints the entry assembly's version, which is the test host's under a test runner.
        foreach (VersionOption v in root.Options.OfType<VersionOption>())
            v.Action = new PrintVersion(output);

        var validate = new Command("validate", "Check a config file and its plugins' options; print every error as file:line:column: key: message (exit code 2)");
        validate.Add(config);
        validate.SetAction(r => Validate(r.GetRequiredValue(config), r.GetValue(plugins) ?? [], output, error));
        root.Add(validate);

        var list = new Command("plugins", "List the installed plugin kinds with their options, types, defaults and descriptions");
        list.SetAction(r => ListPlugins(r.GetValue(plugins) ?? [], output, error));
        root.Add(list);

        var logLevel = new Option<LogLevel?>("--log-level") { Description = "Overrides [host] log-level (trace, debug, information, warning, error, critical)" };
        var logFormat = new Option<LogFormat?>("--log-format")
        {
            Description = $"Overrides [host] log-format and {Logging.FormatterVariable}: text, json (one object per line) or systemd (journald priorities)",
        };
        var run = new Command("run", "Serve the devices of a config file until SIGINT or SIGTERM; SIGHUP reloads the file");
        run.Add(config);
        run.Add(logLevel);
        run.Add(logFormat);
        run.SetAction((r, ct) => RunCommand.RunAsync(r.GetRequiredValue(config), r.GetValue(plugins) ?? [], r.GetValue(logLevel), r.GetValue(logFormat), output, error, ct));
        root.Add(run);

        var demo = new Command("demo", "Start the config's devices through their real transports and drive two built-in peers through them: ALLOC, ATTACH, write, notify, event, read, DETACH");
        demo.Add(config);
        demo.Add(logLevel);
        demo.SetAction((r, ct) => DemoCommand.RunAsync(r.GetRequiredValue(config), r.GetValue(plugins) ?? [], r.GetValue(logLevel), output, error, ct));
        root.Add(demo);

        var stateDir = new Option<string?>("--state-dir") { Description = $"State directory of the running host (default: the config's state-dir, else {HostSettings.DefaultStateDirectory})" };
        var statusConfig = new Option<string?>("--config") { Description = "Take the state directory from this config file" };
        var json = new Option<bool>("--json") { Description = "Print the raw JSON snapshot (same as --format json); with no host, a JSON error object" };
        var format = new Option<StatusFormat?>("--format") { Description = "text, json, or prometheus (text exposition format, for node_exporter's textfile collector)" };
        var status = new Command("status", "Show a running host's devices, devids, regions, counters and memory usage");
        status.Add(stateDir);
        status.Add(statusConfig);
        status.Add(json);
        status.Add(format);
        status.SetAction((r, ct) => StatusCommand.RunAsync(r.GetValue(stateDir), r.GetValue(statusConfig),
            r.GetValue(format) ?? (r.GetValue(json) ? StatusFormat.Json : StatusFormat.Text), output, error, ct));
        root.Add(status);

        var reload = new Command("reload", "Make the running host re-read its config file (as SIGHUP does) and print what changed; exit 1 when it was refused");
        reload.Add(stateDir);
        reload.Add(statusConfig);
        reload.SetAction((r, ct) => StatusCommand.ReloadAsync(r.GetValue(stateDir), r.GetValue(statusConfig), output, error, ct));
        root.Add(reload);

        root.Add(MatrixCommand.Create(plugins, output, error));
        return root;
    }

    /// <summary>Parses and invokes; the process exit code.</summary>
    public static Task<int> InvokeAsync(string[] args, TextWriter output, TextWriter error, CancellationToken ct = default)
    {
        ParseResult parsed = Create(output, error).Parse(args);
        var invocation = new InvocationConfiguration
        {
            Output = output,
            Error = error,
            // run installs its own SIGINT/SIGTERM handling so that it can stop devices cleanly.
            ProcessTerminationTimeout = null,
        };
        return parsed.InvokeAsync(invocation, ct);
    }

    /// <summary>The program's version (informational version of the host assembly).</summary>
    public static string Version =>
        typeof(Cli).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "0";

    /// <summary>Loads and validates a config; prints errors and plugin failures (as warnings) to <paramref name="error"/>.</summary>
    /// <returns>The config and catalog, or null (errors printed) when invalid.</returns>
    internal static (VismConfig Config, PluginCatalog Plugins)? Load(string file, string[] extraPlugins, TextWriter error)
    {
        foreach (string dir in extraPlugins)
            if (!Directory.Exists(dir))
            {
                error.WriteLine($"vism: --plugins {dir}: no such directory");
                return null;
            }
        var collect = new CollectingLogger();
        try
        {
            var result = ConfigLoader.Load(file, extraPlugins, collect);
            PrintFailures(result.Plugins, error);
            foreach (ConfigError w in result.Config.Warnings)
                error.WriteLine($"vism: warning: {w}");
            return result;
        }
        catch (ConfigException ex)
        {
            foreach (string line in collect.Lines) error.WriteLine($"vism: {line}");
            foreach (ConfigError e in ex.Errors) error.WriteLine(e.ToString());
            error.WriteLine($"vism: {ex.Errors.Count} error(s) in {file}; nothing was started");
            return null;
        }
    }

    internal static void PrintFailures(PluginCatalog catalog, TextWriter error)
    {
        foreach (PluginFailure f in catalog.Failures)
            error.WriteLine($"vism: warning: {f}");
    }

    private static int Validate(string file, string[] extraPlugins, TextWriter output, TextWriter error)
    {
        var loaded = Load(file, extraPlugins, error);
        if (loaded is not var (config, catalog)) return ExitCodes.BadConfig;
        using (catalog)
        {
            output.WriteLine($"{file}: valid, {config.Devices.Count} device(s)");
            foreach (DeviceSettings d in config.Devices)
            {
                string events = d.Events?.Registration.Name ?? "none";
                output.WriteLine($"  {d.Name}: transport {d.Transport.Registration.Name}, memory {d.Memory.Registration.Name}, events {events}; " +
                    $"{d.Description.MaxRegions} regions of {Sizes.Format(d.Description.RegionSize)}" +
                    (d.Endpoints.Count > 0 ? $"; endpoint {string.Join(", ", d.Endpoints)}" : ""));
            }
        }
        return ExitCodes.Ok;
    }

    private static int ListPlugins(string[] extraPlugins, TextWriter output, TextWriter error)
    {
        foreach (string dir in extraPlugins)
            if (!Directory.Exists(dir))
            {
                error.WriteLine($"vism: --plugins {dir}: no such directory");
                return ExitCodes.BadConfig;
            }
        using PluginCatalog catalog = PluginCatalog.Load([PluginCatalog.DefaultDirectory, .. extraPlugins], new CollectingLogger());
        output.WriteLine($"vism {Version}, plugin contract {Vism.Abstractions.VismContract.Version}");
        output.WriteLine($"searched: {string.Join(", ", new[] { PluginCatalog.DefaultDirectory }.Concat(extraPlugins.Select(Path.GetFullPath)))}");
        foreach (var group in catalog.Registrations.GroupBy(r => r.Kind))
        {
            output.WriteLine();
            output.WriteLine($"{PluginCatalog.Describe(group.Key)} kinds ([device.{PluginCatalog.Describe(group.Key)}] kind = \"...\"):");
            foreach (PluginRegistration r in group)
            {
                output.WriteLine($"  {r.Name}: {r.Summary}");
                output.WriteLine($"    plugin {r.Plugin.Name} {r.Plugin.Version} ({r.Plugin.Path})");
                PrintOptions(r.Options, "    ", output);
            }
        }
        output.WriteLine();
        output.WriteLine("[host] keys:");
        PrintOptions(HostSettings.Schema, "  ", output);
        output.WriteLine();
        output.WriteLine("[[device]] keys (besides [device.transport], [device.memory], [device.events]):");
        PrintOptions(DeviceSection.Schema, "  ", output);
        if (!catalog.Registrations.Any()) output.WriteLine("no plugins installed");
        if (catalog.Failures.Count > 0)
        {
            output.WriteLine();
            output.WriteLine("not loaded:");
            foreach (PluginFailure f in catalog.Failures) output.WriteLine($"  {f}");
        }
        return ExitCodes.Ok;
    }

    private static void PrintOptions(OptionsSchema schema, string indent, TextWriter output)
    {
        if (schema.Options.Count == 0) output.WriteLine($"{indent}(no options)");
        int width = schema.Options.Count == 0 ? 0 : schema.Options.Max(o => o.Key.Length);
        foreach (OptionInfo o in schema.Options)
        {
            output.WriteLine($"{indent}{o.Key.PadRight(width)}  {o.TypeName}, default {o.Default ?? "(none)"}");
            if (o.Description is not null) output.WriteLine($"{indent}{new string(' ', width)}  {o.Description}");
        }
    }
}


internal sealed class PrintVersion(TextWriter output) : System.CommandLine.Invocation.SynchronousCommandLineAction
{
    public override int Invoke(ParseResult parseResult)
    {
        output.WriteLine(Cli.Version);
        return ExitCodes.Ok;
    }
}

/// <summary>A logger that keeps warnings as lines (for commands that print them themselves).</summary>
internal sealed class CollectingLogger : ILogger
{
    public List<string> Lines { get; } = [];

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Warning;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (IsEnabled(logLevel)) Lines.Add(formatter(state, exception));
    }
}
