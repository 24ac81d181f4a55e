// SAP's JavaScript SDK (@sap-ai-sdk/ai-api), unchanged, driven by test_sap_js_sdk.py.
//
// Usage: AICORE_SERVICE_KEY='<service key JSON>' node metrics.mjs '<plan JSON>'
// plan: {"group": "default", "patches": [<MetricResource>, ...], "find": ["executionId", ...]}
// Sends each PATCH with MetricsApi.metricsPatch, then one GET with MetricsApi.metricsFind, and
// prints one JSON line: {"patched": <count>, "found": <the GET answer, or null>}. On a failure
// it prints {"error", "status", "body"} and exits 1, so that the test can say what went wrong.
import { MetricsApi } from '@sap-ai-sdk/ai-api';

const plan = JSON.parse(process.argv[2] ?? '{}');
const headers = { 'AI-Resource-Group': plan.group ?? 'default' };

function failure(error) {
  // The SDK wraps the HTTP error; somewhere down its cause chain is the server's answer.
  let cause = error;
  while (cause && !cause.response && cause.cause) cause = cause.cause;
  return {
    error: String(error?.stack ?? error),
    status: cause?.response?.status ?? null,
    body: cause?.response?.data ?? null,
  };
}

try {
  let patched = 0;
  for (const resource of plan.patches ?? []) {
    await MetricsApi.metricsPatch(resource, headers).execute();
    patched += 1;
  }
  let found = null;
  if (plan.find) {
    found = await MetricsApi.metricsFind({ executionIds: plan.find }, headers).execute();
  }
  console.log(JSON.stringify({ patched, found }));
} catch (error) {
  console.log(JSON.stringify(failure(error)));
  process.exitCode = 1;
}
