using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Vism.Conformance.Composition;
using Vism.Driver;

namespace Vism.Conformance;

/// <summary>Every check's result on one combination.</summary>
/// <param name="Combination">The combination.</param>
/// <param name="Results">One result per check, in suite order.</param>
/// <param name="Duration">Wall time of the whole row.</param>
public sealed record CombinationReport(Combination Combination, IReadOnlyList<CheckResult> Results, TimeSpan Duration)
{
    /// <summary>How many results have <paramref name="outcome"/>.</summary>
    /// <param name="outcome">The outcome.</param>
    /// <returns>The count.</returns>
    public int Count(Outcome outcome) => Results.Count(r => r.Outcome == outcome);
}

/// <summary>A whole matrix run: rows are combinations, columns are checks.</summary>
/// <param name="Checks">The checks run, in column order.</param>
/// <param name="Combinations">One row per combination.</param>
/// <param name="Started">When the run started.</param>
/// <param name="Duration">Wall time of the run.</param>
public sealed record MatrixReport(IReadOnlyList<ConformanceCheck> Checks, IReadOnlyList<CombinationReport> Combinations, DateTimeOffset Started, TimeSpan Duration)
{
    /// <summary>How many results in all have <paramref name="outcome"/>.</summary>
    /// <param name="outcome">The outcome.</param>
    /// <returns>The count.</returns>
    public int Count(Outcome outcome) => Combinations.Sum(c => c.Count(outcome));

    /// <summary>Whether any check failed on any combination.</summary>
    public bool AnyFailed => Count(Outcome.Failed) > 0;

    /// <summary>Whether any check was skipped (not counting checks that do not apply).</summary>
    public bool AnySkipped => Count(Outcome.Skipped) > 0;

    /// <summary>Every failure, one per line (<c>combination check: reason</c>); empty when none failed.</summary>
    /// <returns>The lines joined.</returns>
    public string FailureSummary() => string.Join(Environment.NewLine,
        from c in Combinations from r in c.Results where r.Outcome == Outcome.Failed select $"{c.Combination} {r.CheckId}: {r.Reason}");
}

/// <summary>
/// Runs checks against combinations: for each combination, each check in order on a thread of its
/// own, with a timeout; whatever the check composed is disposed before the next starts, so checks
/// never share devices and one failure cannot spill into the next.
/// </summary>
public sealed class ConformanceRunner
{
    private readonly IComposer _composer;
    private readonly ILogger _log;
    private readonly ConformanceOptions _options;

    /// <summary>Creates a runner.</summary>
    /// <param name="composer">How devices of a combination are made.</param>
    /// <param name="logs">Logging.</param>
    /// <param name="options">Timeouts; null for the defaults.</param>
    public ConformanceRunner(IComposer composer, ILoggerFactory logs, ConformanceOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(composer);
        ArgumentNullException.ThrowIfNull(logs);
        _composer = composer;
        _log = logs.CreateLogger("Vism.Conformance");
        _options = options ?? new ConformanceOptions();
    }

    /// <summary>Runs <paramref name="checks"/> on every combination, in order.</summary>
    /// <param name="combinations">The rows.</param>
    /// <param name="checks">The columns.</param>
    /// <param name="progress">Told of each result as it comes (for a live display).</param>
    /// <param name="cancellation">Stops after the running check.</param>
    /// <returns>The report.</returns>
    public async Task<MatrixReport> RunAsync(IReadOnlyList<Combination> combinations, IReadOnlyList<ConformanceCheck> checks,
        Action<Combination, CheckResult>? progress = null, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(combinations);
        ArgumentNullException.ThrowIfNull(checks);
        DateTimeOffset started = DateTimeOffset.UtcNow;
        var total = Stopwatch.StartNew();
        var rows = new List<CombinationReport>();
        foreach (Combination combination in combinations)
        {
            var row = Stopwatch.StartNew();
            var results = new List<CheckResult>();
            foreach (ConformanceCheck check in checks)
            {
                cancellation.ThrowIfCancellationRequested();
                CheckResult result = await RunOneAsync(combination, check, cancellation).ConfigureAwait(false);
                results.Add(result);
                progress?.Invoke(combination, result);
            }
            rows.Add(new CombinationReport(combination, results, row.Elapsed));
        }
        return new MatrixReport(checks, rows, started, total.Elapsed);
    }

    /// <summary>Runs one check on one combination.</summary>
    /// <param name="combination">The combination.</param>
    /// <param name="check">The check.</param>
    /// <param name="cancellation">Cancels composing.</param>
    /// <returns>Its result; never throws for what the check or the devices do.</returns>
    public async Task<CheckResult> RunOneAsync(Combination combination, ConformanceCheck check, CancellationToken cancellation = default)
    {
        var watch = Stopwatch.StartNew();
        var context = new CheckContext(_composer, combination, _options, _log, cancellation);
        CheckResult result;
        Task work = Task.Factory.StartNew(() => check.Run(context), cancellation, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        try
        {
            await work.WaitAsync(_options.CheckTimeout, cancellation).ConfigureAwait(false);
            result = new CheckResult(check.Id, Outcome.Passed, watch.Elapsed);
        }
        catch (TimeoutException)
        {
            result = new CheckResult(check.Id, Outcome.Failed, watch.Elapsed, $"did not finish within {_options.CheckTimeout.TotalSeconds:0} s");
            _ = work.ContinueWith(t => _log.LogDebug(t.Exception, "{Combination} {Check}: ended after its timeout", combination, check.Id),
                CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
        }
        catch (CheckEndedException ex)
        {
            result = new CheckResult(check.Id, ex.Outcome, watch.Elapsed, ex.Message, ex.Fix);
        }
        catch (DriverTransportException ex)
        {
            result = new CheckResult(check.Id, Outcome.Failed, watch.Elapsed, $"the driver side failed: {ex.Message}");
            _log.LogDebug(ex, "{Combination} {Check}: driver failure", combination, check.Id);
        }
        catch (OperationCanceledException) when (cancellation.IsCancellationRequested)
        {
            result = new CheckResult(check.Id, Outcome.Skipped, watch.Elapsed, "the run was cancelled", "run it again");
        }
        catch (Exception ex)
        {
            string at = ex.StackTrace?.Split('\n').FirstOrDefault()?.Trim() ?? "";
            result = new CheckResult(check.Id, Outcome.Failed, watch.Elapsed, $"{ex.GetType().Name}: {ex.Message} {at}".TrimEnd());
            _log.LogDebug(ex, "{Combination} {Check}: unexpected exception", combination, check.Id);
        }
        TimeSpan duration = watch.Elapsed;
        try
        {
            await context.DisposeAsync().AsTask().WaitAsync(_options.CheckTimeout, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            _log.LogError(ex, "{Combination} {Check}: stopping its devices failed", combination, check.Id);
            if (result.Outcome == Outcome.Passed)
                result = new CheckResult(check.Id, Outcome.Failed, duration, $"stopping its devices failed: {ex.Message}");
        }
        _log.LogDebug("{Combination} {Check}: {Outcome} in {Duration} ms {Reason}", combination, check.Id, result.Outcome, (long)duration.TotalMilliseconds, result.Reason);
        return result with { Duration = duration };
    }
}
