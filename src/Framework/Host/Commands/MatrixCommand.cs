using System.CommandLine;
using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Conformance;
using Vism.Conformance.Composition;
using Vism.Conformance.Reports;
using Vism.Host.Composition;
using Vism.Host.Plugins;

namespace Vism.Host.Commands;

/// <summary>What <c>vism matrix</c> was asked for.</summary>
/// <param name="Transports">Transport kinds; empty = every installed one.</param>
/// <param name="Memories">Memory kinds; empty = every installed one.</param>
/// <param name="Events">Events kinds (<c>none</c> allowed); empty = every installed one.</param>
/// <param name="Checks">Check ids or id prefixes; empty = every check.</param>
/// <param name="Options">Plugin options as <c>KIND.KEY=VALUE</c>.</param>
/// <param name="JUnit">Where to write JUnit XML, or null.</param>
/// <param name="Json">Where to write JSON, or null.</param>
/// <param name="FailOnSkip">Whether a skipped check makes the exit code non-zero.</param>
/// <param name="List">Only list the checks with the statements they prove.</param>
/// <param name="LogLevel">Log level of the devices and plugins (default: critical only).</param>
/// <param name="Width">Table width; null = the terminal's (120 when not a terminal).</param>
public sealed record MatrixArguments(
    IReadOnlyList<string> Transports, IReadOnlyList<string> Memories, IReadOnlyList<string> Events, IReadOnlyList<string> Checks,
    IReadOnlyList<string> Options, string? JUnit, string? Json, bool FailOnSkip, bool List, LogLevel? LogLevel, int? Width);

/// <summary>
/// <c>vism matrix</c>: composes devices of every selected transport x memory x events combination
/// (all installed kinds by default: the in-repo ones and third-party plugins found with --plugins),
/// runs the conformance suite against each through the Driver, prints the matrix, and optionally
/// writes JUnit XML and JSON. Exit code 1 when any check failed (or was skipped, with
/// --fail-on-skip), 2 for bad arguments.
/// </summary>
public static class MatrixCommand
{
    /// <summary>Builds the <c>matrix</c> command.</summary>
    /// <param name="plugins">The root's --plugins option.</param>
    /// <param name="output">Standard output.</param>
    /// <param name="error">Standard error.</param>
    /// <returns>The command.</returns>
    public static Command Create(Option<string[]> plugins, TextWriter output, TextWriter error)
    {
        Option<string[]> Kinds(string name, string what, string extra = "") => new(name)
        {
            Description = $"{what} kind(s) to test (repeatable, or comma-separated){extra}; default: every installed one",
            Arity = ArgumentArity.OneOrMore,
            AllowMultipleArgumentsPerToken = false,
        };
        Option<string[]> transport = Kinds("--transport", "Transport");
        Option<string[]> memory = Kinds("--memory", "Memory");
        Option<string[]> events = Kinds("--events", "Events", "; \"none\" composes devices without an events plugin");
        var check = new Option<string[]>("--check") { Description = "Run only these checks: an id, or a prefix such as \"alloc\" (repeatable); see --list", Arity = ArgumentArity.OneOrMore };
        var option = new Option<string[]>("--option")
        {
            Description = "Set a plugin option for the compositions: KIND.KEY=VALUE with VALUE a TOML literal, e.g. file.directory=\"/dev/shm/x\" (repeatable). " +
                          "Without it every plugin runs with its defaults, as a config that does not mention the option would",
            Arity = ArgumentArity.OneOrMore,
        };
        var junit = new Option<string?>("--junit") { Description = "Write the results as JUnit XML to this file" };
        var json = new Option<string?>("--json") { Description = "Write the results as JSON to this file" };
        var failOnSkip = new Option<bool>("--fail-on-skip") { Description = "Exit non-zero when a check is skipped (CI: a machine that cannot run a combination is a failure)" };
        var list = new Option<bool>("--list") { Description = "List the checks with the statement each proves, and exit" };
        var logLevel = new Option<LogLevel?>("--log-level") { Description = "Log level of the devices and plugins while checks run (default: critical)" };
        var width = new Option<int?>("--width") { Description = "Width of the table in characters (default: the terminal's, or 120)" };

        var command = new Command("matrix",
            "Run the conformance suite against every transport x memory x events combination (installed plugins included) " +
            "and print a table: rows are combinations, columns are checks. Exit code 1 on any failure.");
        foreach (Option o in new Option[] { transport, memory, events, check, option, junit, json, failOnSkip, list, logLevel, width })
            command.Add(o);
        command.SetAction((r, ct) => RunAsync(new MatrixArguments(
                Split(r.GetValue(transport)), Split(r.GetValue(memory)), Split(r.GetValue(events)), Split(r.GetValue(check)),
                r.GetValue(option) ?? [], r.GetValue(junit), r.GetValue(json), r.GetValue(failOnSkip), r.GetValue(list), r.GetValue(logLevel), r.GetValue(width)),
            r.GetValue(plugins) ?? [], output, error, ct));
        return command;
    }

    private static string[] Split(string[]? values) =>
        [.. (values ?? []).SelectMany(v => v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).Distinct()];

    /// <summary>Runs the matrix.</summary>
    /// <param name="args">What to run.</param>
    /// <param name="extraPlugins">Plugin directories besides the program's own.</param>
    /// <param name="output">Where the table goes.</param>
    /// <param name="error">Where problems go.</param>
    /// <param name="ct">Stops after the running check.</param>
    /// <returns>The exit code.</returns>
    public static async Task<int> RunAsync(MatrixArguments args, IReadOnlyList<string> extraPlugins, TextWriter output, TextWriter error, CancellationToken ct)
    {
        if (args.List)
        {
            ListChecks(output);
            return ExitCodes.Ok;
        }
        foreach (string dir in extraPlugins)
            if (!Directory.Exists(dir))
            {
                error.WriteLine($"vism matrix: --plugins {dir}: no such directory");
                return ExitCodes.BadConfig;
            }
        var options = new List<KindOption>();
        foreach (string text in args.Options)
        {
            if (!KindOption.TryParse(text, out KindOption? o))
            {
                error.WriteLine($"vism matrix: --option {text}: expected KIND.KEY=VALUE, e.g. vhost-user.vectors=8");
                return ExitCodes.BadConfig;
            }
            options.Add(o!);
        }
        IReadOnlyList<ConformanceCheck> checks;
        try
        {
            checks = ConformanceSuite.Select(args.Checks);
        }
        catch (ArgumentException ex)
        {
            error.WriteLine($"vism matrix: --check: {ex.Message}");
            return ExitCodes.BadConfig;
        }

        var collect = new CollectingLogger();
        using PluginCatalog catalog = PluginCatalog.Load([PluginCatalog.DefaultDirectory, .. extraPlugins], collect);
        Cli.PrintFailures(catalog, error);
        List<string>? transports = Kinds(catalog, PluginKind.Transport, args.Transports, "--transport", error);
        List<string>? memories = Kinds(catalog, PluginKind.Memory, args.Memories, "--memory", error);
        List<string>? events = Kinds(catalog, PluginKind.Events, args.Events, "--events", error);
        if (transports is null || memories is null || events is null)
            return ExitCodes.BadConfig;
        if (events.Count == 0)
            events.Add(Combination.NoEvents);
        IReadOnlyList<Combination> combinations = Combination.All(transports, memories, events);
        if (combinations.Count == 0)
        {
            error.WriteLine("vism matrix: nothing to test: no transport or memory kind is installed (see `vism plugins`)");
            return ExitCodes.BadConfig;
        }

        output.WriteLine($"vism matrix: {combinations.Count} combination(s) x {checks.Count} check(s)");
        MatrixReport report;
        using (ILoggerFactory logs = Logging.Create(args.LogLevel ?? LogLevel.Critical))
        {
            var runner = new ConformanceRunner(new MatrixComposer(catalog, logs, KindOption.Merge(options)), logs);
            var done = new Dictionary<Combination, List<CheckResult>>();
            try
            {
                report = await runner.RunAsync(combinations, checks, (combination, result) =>
                {
                    if (!done.TryGetValue(combination, out List<CheckResult>? results))
                        done[combination] = results = [];
                    results.Add(result);
                    if (results.Count == checks.Count)
                        output.WriteLine($"  {combination}: {Count(results, Outcome.Passed)} passed, {Count(results, Outcome.Failed)} failed, " +
                                         $"{Count(results, Outcome.Skipped)} skipped, {Count(results, Outcome.NotApplicable)} not applicable " +
                                         $"in {TableReport.Time(TimeSpan.FromTicks(results.Sum(r => r.Duration.Ticks)))}");
                }, ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                error.WriteLine("vism matrix: cancelled");
                return ExitCodes.Failed;
            }
        }
        output.WriteLine();
        TableReport.Write(report, output, args.Width ?? TerminalWidth());
        if (!Write(args.JUnit, "JUnit XML", path => JUnitReport.Write(report, path), output, error) ||
            !Write(args.Json, "JSON", path => JsonReport.Write(report, path), output, error))
            return ExitCodes.Failed;
        return report.AnyFailed || (args.FailOnSkip && report.AnySkipped) ? ExitCodes.Failed : ExitCodes.Ok;
    }

    private static int Count(List<CheckResult> results, Outcome outcome) => results.Count(r => r.Outcome == outcome);

    /// <summary>The requested kinds, checked against the installed ones; every installed one when none was requested.</summary>
    private static List<string>? Kinds(PluginCatalog catalog, PluginKind kind, IReadOnlyList<string> requested, string option, TextWriter error)
    {
        IReadOnlyList<string> installed = catalog.Names(kind);
        if (requested.Count == 0)
            return [.. installed];
        var unknown = requested.Where(k => !installed.Contains(k) && !(kind == PluginKind.Events && k == Combination.NoEvents)).ToList();
        if (unknown.Count == 0)
            return [.. requested];
        error.WriteLine($"vism matrix: {option} {string.Join(", ", unknown)}: not installed; installed {PluginCatalog.Describe(kind)} kinds: " +
                        $"{(installed.Count == 0 ? "none" : string.Join(", ", installed))}{(kind == PluginKind.Events ? " (and none)" : "")}");
        return null;
    }

    private static bool Write(string? path, string what, Action<string> write, TextWriter output, TextWriter error)
    {
        if (path is null)
            return true;
        try
        {
            string full = Path.GetFullPath(path);
            Directory.CreateDirectory(Path.GetDirectoryName(full)!);
            write(full);
            output.WriteLine($"{what}: {full}");
            return true;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            error.WriteLine($"vism matrix: cannot write {what} to {path}: {ex.Message}");
            return false;
        }
    }

    private static void ListChecks(TextWriter output)
    {
        foreach (ConformanceCheck c in ConformanceSuite.All)
        {
            output.WriteLine($"{c.Id}: {c.Title}");
            output.WriteLine($"  proves ({c.Proves.Source}): \"{c.Proves.Text}\"");
        }
    }

    private static int TerminalWidth()
    {
        if (Console.IsOutputRedirected)
            return 120;
        try
        {
            return Math.Max(60, Console.WindowWidth);
        }
        catch (IOException)
        {
            return 120;
        }
    }
}
