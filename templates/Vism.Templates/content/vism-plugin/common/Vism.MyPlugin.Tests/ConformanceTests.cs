using Microsoft.Extensions.Logging;
using Vism.Conformance;
using Vism.Conformance.Composition;
#if (kind != "memory")
using Vism.Memory.File;
#endif
#if (kind != "events")
using Vism.Events.Vq;
#endif
using Xunit;

namespace Vism.MyPlugin.Tests;

/// <summary>The whole vism conformance suite against the plugin: the checks `vism matrix` runs,
/// composed in this process by <see cref="DirectComposer"/> as the host composes devices.</summary>
public sealed class ConformanceTests
{
    [Fact]
    public async Task ConformanceSuite_Plugin_PassesEveryApplicableCheck()
    {
        using ILoggerFactory logs = LoggerFactory.Create(b => b.SetMinimumLevel(LogLevel.Warning));
#if (kind == "memory")
        // Your memory kind behind the in-process transport, with the eventq.
        var composer = new DirectComposer(logs, new MyPlugin(), new VqEventsPlugin());
        var combination = new Combination("in-memory", MyPlugin.Kind, "vq");
#elif (kind == "events")
        // Your event channel behind the in-process transport, regions in files of the state directory.
        var composer = new DirectComposer(logs, new MyPlugin(), new FileMemoryPlugin())
            .Configure<FileMemoryOptions>(o => o.Directory = "regions");
        var combination = new Combination("in-memory", "file", MyPlugin.Kind);
#else
        // Your transport (through your IDriverConnector), regions in files, the eventq.
        var composer = new DirectComposer(logs, new MyPlugin(), new FileMemoryPlugin(), new VqEventsPlugin())
            .Configure<FileMemoryOptions>(o => o.Directory = "regions");
        var combination = new Combination(MyPlugin.Kind, "file", "vq");
#endif

        MatrixReport report = await new ConformanceRunner(composer, logs).RunAsync([combination], ConformanceSuite.All);

        Assert.False(report.AnyFailed, report.FailureSummary());
        Assert.False(report.AnySkipped, report.FailureSummary());
        Assert.True(report.Count(Outcome.Passed) >= ConformanceSuite.All.Count / 2,
            $"only {report.Count(Outcome.Passed)} of {ConformanceSuite.All.Count} checks applied to {combination}");
    }
}
